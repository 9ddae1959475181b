"""Studies: grids of runs, aggregation and reports (tables + plots)."""
