"""Runners: the jobs behind the command line, as library functions.

A runner builds its subject, runs analyses, saves typed results and renders figures and reports into a run folder;
it returns a typed record of what it wrote. Each ``diffmem`` sub-command parses its flags and calls one runner:
``diffmem analyze kim`` → :func:`diffmem.runners.kim.analyze_kim`, ``diffmem demo`` →
:func:`diffmem.runners.demo.run_demo`. The theory lab's runners live in :mod:`diffmem.theory.lab`.
"""
