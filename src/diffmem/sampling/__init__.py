"""The sampling loop, its solvers, guidance schedules, hooks and recorder."""
