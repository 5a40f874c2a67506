"""fedge device runtime: on-device training, update compression, wire protocol, transports."""

__version__ = "0.1.0"
