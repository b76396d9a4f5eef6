"""Outbound HTTP to addresses reelhook was handed, behind one SSRF guard."""
