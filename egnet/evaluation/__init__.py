"""Evaluation: inference, `egnet evaluate`, `egnet score`, `egnet predict`, per-image scores
(``worst``) and the HTML review page (``report``)."""
