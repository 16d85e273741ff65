"""`lightdiff bench`: measure startup, speed, memory, batch stability, OOM boundaries and FLOPs.

The parent process (runner.py) never imports torch: it expands the grid into case groups
(cases.py), runs each group in a fresh subprocess (case.py), enforces a per-case timeout, turns a
crash or a timeout into a row, and appends every row to the JSONL file as it arrives. Rows follow
docs/bench-rows.md (rows.py checks them). FLOPs are counted on the meta device (flops.py) and
joined to rows by the parent from a cached table.
"""
