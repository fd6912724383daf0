"""`./loco up` in parts, one job each: args, host checks, children, VMs, saved states, the page
server, the announcement, and the run that ties them (run.py). scripts/up.py is the entry point."""
