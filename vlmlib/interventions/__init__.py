"""Interventions: activation patching (within a run, and counterfactual: clean into corrupted), attention
knockouts, and the lean clean-run machinery they share."""
