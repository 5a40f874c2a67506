"""Hardware support files shipped as package data: device profiles for simulated fleets (profiles/*.toml)."""
