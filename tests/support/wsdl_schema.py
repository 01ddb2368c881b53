"""Validate codec output against the XML Schema embedded in Marketo's real WSDL.

The WSDL (``marketo_sim/mktows.wsdl``, "Marketo API Version 2_2") is a verbatim public copy:
GitHub ``rubiii/wsdl``, path ``spec/fixtures/wsdl/marketo.wsdl`` (the same blob is in
``savonrb/sekken``); provenance and checksum in ``marketo_sim/WSDL_SOURCE.md`` and
``/work/shared/marketo/SOURCE.md``.

The schema's QName references use prefixes (``tns:``) declared on ``wsdl:definitions``, so
the ``xs:schema`` element is copied into a new root that declares every namespace in scope.
Its global elements are qualified; children are unqualified (no ``elementFormDefault``).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

from lxml import etree

import marketo_sim

WSDL_PATH = Path(marketo_sim.__file__).parent / "mktows.wsdl"
XS_NS = "http://www.w3.org/2001/XMLSchema"
MKTOWS_NS = "http://www.marketo.com/mktows/"
SOAP_ENV_NS = "http://schemas.xmlsoap.org/soap/envelope/"


@functools.cache
def marketo_schema() -> etree.XMLSchema:
    """The XML Schema of the WSDL's ``wsdl:types`` section."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    definitions = etree.parse(str(WSDL_PATH), parser).getroot()
    embedded = definitions.find(f".//{{{XS_NS}}}schema")
    assert embedded is not None, "the WSDL has no embedded xs:schema"
    # Prefixed declarations only: the WSDL declares no default namespace.
    declared = [*definitions.nsmap.items(), *embedded.nsmap.items()]
    in_scope = {prefix: uri for prefix, uri in declared if prefix is not None}
    schema_root = etree.Element(embedded.tag, attrib=dict(embedded.attrib), nsmap=in_scope)
    schema_root.extend(copy.deepcopy(child) for child in embedded)
    return etree.XMLSchema(schema_root)


def assert_valid_element(element: etree._Element) -> None:
    """Fail with the schema's error log unless ``element`` (a global element) is valid."""
    standalone = etree.fromstring(etree.tostring(element))
    schema = marketo_schema()
    if not schema.validate(standalone):
        raise AssertionError(f"{etree.QName(element).localname} is invalid: {schema.error_log}")


def assert_valid_request(body: bytes) -> None:
    """Validate the AuthenticationHeader and paramsSyncMultipleLeads of a request envelope."""
    root = etree.fromstring(body)
    assert etree.QName(root) == etree.QName(SOAP_ENV_NS, "Envelope")
    header = root.find(f"{{{SOAP_ENV_NS}}}Header/{{{MKTOWS_NS}}}AuthenticationHeader")
    params = root.find(f"{{{SOAP_ENV_NS}}}Body/{{{MKTOWS_NS}}}paramsSyncMultipleLeads")
    assert header is not None, "no ns1:AuthenticationHeader in SOAP-ENV:Header"
    assert params is not None, "no ns1:paramsSyncMultipleLeads in SOAP-ENV:Body"
    assert_valid_element(header)
    assert_valid_element(params)
