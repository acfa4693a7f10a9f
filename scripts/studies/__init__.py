"""Studies: the stage runner, the VarNet phase-source study, the prior study, reports and gallery."""
