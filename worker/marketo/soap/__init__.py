"""The SOAP codec for Marketo ``syncMultipleLeads``: pure functions, no I/O.

``signing`` makes the AuthenticationHeader, ``envelope`` builds the request body and
``response`` parses per-lead results and faults (with the project's hardened XML parser),
``faults`` maps fault codes onto the error tree and ``api`` is the MarketoApi over them;
``describe`` reads the lead fields (describeMObject).
"""
