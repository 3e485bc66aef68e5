"""MLflow: run set-up and the RunLogger (``runs``), shared client helpers (``client``),
registered-model look-ups (``registered``) and the drift reference of a run (``reference``)."""
