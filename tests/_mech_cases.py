"""Blocker / hypothesis / intervention sets shared by the tests that pin compiled twins of the
mechanism equations (analytic Jacobian, right-hand sides across lanes) to the reference."""

MECHANISM_CASES = [
    (("ketamine", "norketamine"), None, None),
    (("ketamine", "norketamine", "hnk"), "d=1", None),
    (("esketamine", "noresketamine"), "only:a", "eef2k-knockout"),
    (("ketamine", "norketamine"), None, "rapamycin,glun2b-deletion"),
    (("ketamine", "norketamine"), None, "bdnf-knockout,nbqx,spine-blockade"),
]
