"""MEA stimulation and recording: stimulus rules, the MEA stimulator role with vendor back
ends (Intan RHX today), and spike sources (docs/devices/intan_rhx.md)."""
