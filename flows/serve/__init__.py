"""`cdp serve` (DESIGN §11): profile lookups, decisions and the HTTP collector, over the
profile projection. The HTTP layer is thin: the replica and the decisions are in
`operators.replica` and `operators.offers`."""
