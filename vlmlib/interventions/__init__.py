"""Interventions: activation patching, attention knockouts, and the lean clean-run machinery they share."""
