"""The publish gate: one for every kind of policy, its stages plug-ins (the flow: gate/gate.py).

Imports only `core` and never Ray; cluster/gate_actor.py is its Ray shell.
"""

from gate.gate import Gate
from gate.pointer import GateError
from gate.slices import Slices
from gate.stage import Candidate, Stage, Verdict, register_stage

__all__ = ["Candidate", "Gate", "GateError", "Slices", "Stage", "Verdict", "register_stage"]
