"""A Marketo simulator, SOAP (syncMultipleLeads, describeMObject) and REST (identity, Sync Leads,
describe2) on one port and one lead database: strict parsing, limits, faults, admin API."""

from __future__ import annotations

from marketo_sim.config import SimConfig
from marketo_sim.runner import AdminClient, SimulatorThread
from marketo_sim.server import create_app, run

__all__ = ["AdminClient", "SimConfig", "SimulatorThread", "create_app", "run"]
