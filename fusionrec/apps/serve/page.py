"""The page at ``/``: a user's live list with each item's reason, and the fusion weights (filled in later)."""

PAGE = "<!doctype html><title>fusionrec</title><p>fusionrec serving API: see <a href='/docs'>/docs</a>."
