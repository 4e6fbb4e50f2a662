"""Where the units of a long job run: in this process (the default) or on a Ray cluster, with identical results.

A long job cuts its work into :class:`Unit` s — a file, the settings that make it and a task ``task(state) -> dict``
whose inputs (prompt ids, seeds, parameters) are fixed by the unit's id, never by where or when it runs.
:func:`run_units` reuses the units saved under the same settings, sends the others to an executor, writes each
atomically as it arrives (the format of :func:`diffmem.io.resumable_unit`, so a killed driver resumes from disk) and
returns them in unit order, so merging is deterministic. A task may also return tensors (``{"arrays": {name:
tensor}, ...}``): they are written next to the unit as safetensors before its JSON stamp, and read back with it.

- :class:`SerialExecutor` (the default) runs the tasks here, in order, on the caller's subject: today's behaviour;
  Ray is never imported.
- :class:`RayExecutor` starts a local cluster (``workers=N``) or joins one (``address=...``), builds the subject
  *once per worker* from a small picklable recipe (``build()``, e.g. a world name and the steps) inside a Ray actor,
  and sends the tasks through Ray's object store. One GPU per worker where the cluster has GPUs. A worker that dies
  is restarted (its ``build()`` runs again) and its unit is sent again; an error raised by a task is the job's error.

Records are bitwise identical to a serial run as long as every worker computes as the driver does: same device and
dtype, one torch thread each (:data:`RayExecutor.threads`, also ``OMP_NUM_THREADS`` of the workers).
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffmem.io import read_arrays, saved_unit, write_arrays, write_json
from diffmem.progress import progress_bar

__all__ = ["Unit", "SerialExecutor", "RayExecutor", "make_executor", "run_units", "prompt_refs", "pick"]


@dataclass(frozen=True)
class Unit:
    """One resumable piece of a job: saved at ``path`` as ``{"settings": settings, **task(state)}``.

    ``task`` must be picklable for Ray (a ``functools.partial`` of a module-level function over small arguments:
    prompt ids, seeds, a detector's parameters — never the subject, which each worker already holds). Tensors it
    returns under ``"arrays"`` (``{name: tensor}``) go to :attr:`arrays_path`; the JSON then lists their names."""

    path: Path
    settings: dict
    task: Callable[[Any], dict]

    @property
    def arrays_path(self) -> Path:
        """Where the unit's tensors lie (safetensors), when its task returns some."""
        return Path(self.path).with_suffix(".safetensors")


def prompt_refs(subject, prompts: Sequence) -> tuple:
    """What a unit carries of its prompts: the id of each prompt that is the subject's own (every worker holds it),
    the prompt itself otherwise (a :class:`~diffmem.subject.Prompt` given from outside the subject)."""
    index = {p.id: p for p in subject.prompts}
    return tuple(p.id if index.get(p.id) is p else p for p in prompts)


def pick(subject, refs: Sequence) -> list:
    """The prompts of ``refs`` (:func:`prompt_refs`), each id looked up in ``subject`` (a worker's own copy)."""
    index = {p.id: p for p in subject.prompts}
    return [index[r] if isinstance(r, str) else r for r in refs]


class SerialExecutor:
    """The tasks in this process, in order, on the caller's ``state``."""

    workers = 1

    def imap(self, tasks: Sequence[Callable[[Any], dict]], state: Any) -> Iterator[tuple[int, dict]]:
        for i, task in enumerate(tasks):
            yield i, task(state)

    def alive(self) -> int:
        return 1

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Worker:
    """A Ray actor's body: the state (a subject) built once, then any number of tasks on it."""

    def __init__(self, build, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.state = None if build is None else build()

    def run(self, task):
        return task(self.state)

    def pid(self) -> int:
        return os.getpid()


class RayExecutor:
    """Tasks on Ray actors that each hold ``build()``'s state.

    Args:
        build: picklable zero-argument recipe of the state (the subject), run once in each worker (again after a
            restart). A ``functools.partial`` of a module-level function over names and numbers, not tensors.
            None: the tasks need no state (they get None).
        workers: actors to start; with no ``address`` a local cluster of that many CPUs is started. None: one per
            GPU of the cluster, else one per CPU.
        address: a running cluster's address (``ray start --head`` prints it; ``auto`` finds the local one).
        threads: torch threads per worker (one keeps results bitwise equal to a one-thread serial run).
        max_restarts: restarts of a dead worker before it is given up; a unit is sent at most ``max_restarts + 1``
            times before the job fails.
        in_flight: tasks queued on each worker, so that none waits for the driver between units.
    """

    threads = 1

    def __init__(self, build: Callable[[], Any] | None, *, workers: int | None = None, address: str | None = None,
                 threads: int = 1, max_restarts: int = 3, in_flight: int = 2):
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be an int >= 1, got {workers!r}")
        if workers is None and address is None:
            raise ValueError("give workers=N (a local cluster) or address=ADDRESS (a running cluster)")
        self.build, self.workers, self.address, self.threads = build, workers, address, threads
        self.max_restarts, self.in_flight = max_restarts, in_flight
        self.actors: list = []
        self.down: set[int] = set()
        self._started_ray = False

    # --- cluster ---------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start or join the cluster and the workers (idempotent)."""
        if self.actors:
            return
        import ray

        env = {"env_vars": {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}}
        if self.address is None:  # local workers import the driver's diffmem (a checkout, a test folder), not another
            env["env_vars"]["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
            if os.environ.get("DIFFMEM_HOME"):  # and read the driver's cache (worlds, the digits classifier)
                env["env_vars"]["DIFFMEM_HOME"] = os.environ["DIFFMEM_HOME"]
        if not ray.is_initialized():
            if self.address is None:
                ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False, runtime_env=env,
                         configure_logging=False)
            else:
                ray.init(address=self.address, log_to_driver=False, runtime_env=env, configure_logging=False)
            self._started_ray = True
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        n = self.workers or gpus or int(resources.get("CPU", 1))
        remote = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0, max_restarts=self.max_restarts,
                            max_task_retries=0, runtime_env=env)(_Worker)
        # the recipe is small and goes with each worker (a restart needs it again; tasks go through the store)
        self.actors = [remote.remote(self.build, self.threads) for _ in range(n)]
        ray.get([a.pid.remote() for a in self.actors])  # every worker built its state (a build error shows here)

    def alive(self) -> int:
        return len(self.actors) - len(self.down)

    def close(self) -> None:
        """Stop the workers; shut Ray down if this executor started it."""
        if not self.actors and not self._started_ray:
            return
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors, self.down = [], set()
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- tasks -----------------------------------------------------------------------------------------------------

    def imap(self, tasks: Sequence[Callable[[Any], dict]], state: Any = None) -> Iterator[tuple[int, dict]]:
        """``(i, tasks[i](worker state))`` in completion order; ``state`` (the driver's) is not used."""
        import ray
        from ray.exceptions import ActorDiedError, RayActorError, RayTaskError

        self.start()
        refs = [ray.put(t) for t in tasks]  # each task into the object store once, whatever the retries
        todo, sent = deque(range(len(tasks))), [0] * len(tasks)
        running: dict = {}  # object ref -> (task index or None for a revival ping, actor index)
        load = [0] * len(self.actors)

        def feed():
            for a in range(len(self.actors)):
                while a not in self.down and load[a] < self.in_flight and todo:
                    i = todo.popleft()
                    sent[i] += 1
                    running[self.actors[a].run.remote(refs[i])] = (i, a)
                    load[a] += 1

        feed()
        while running:
            [ref], _ = ray.wait(list(running), num_returns=1)
            i, a = running.pop(ref)
            load[a] -= 1
            try:
                value = ray.get(ref)
            except RayTaskError as err:  # the task itself failed: the job's error, not the worker's
                raise err.as_instanceof_cause() from None
            except RayActorError as err:  # the worker died: its units go again, a ping tells when it is back
                if i is None and not isinstance(err, ActorDiedError):  # still restarting: ask again shortly
                    time.sleep(0.2)
                    running[self.actors[a].pid.remote()] = (None, a)
                    load[a] += 1
                elif i is None:  # the worker is gone for good (no restart left)
                    if self.alive() == 0 and not any(j is None for j, _ in running.values()):
                        raise RuntimeError("every Ray worker died; see the Ray logs") from None
                else:
                    if sent[i] > self.max_restarts:
                        raise RuntimeError(f"unit {i} was lost with {sent[i]} dying workers; giving up") from None
                    todo.appendleft(i)
                    if a not in self.down:
                        self.down.add(a)
                        running[self.actors[a].pid.remote()] = (None, a)
                        load[a] += 1
                feed()
                continue
            if i is None:
                self.down.discard(a)
            else:
                yield i, value
            feed()
        if todo:  # every worker is gone for good with units left
            raise RuntimeError(f"{len(todo)} unit(s) left and no Ray worker alive; see the Ray logs")


def make_executor(build: Callable[[], Any] | None = None, *, workers: int | None = None,
                  address: str | None = None):
    """``SerialExecutor()`` when neither ``workers`` nor ``address`` is given, else a :class:`RayExecutor` whose
    workers each hold ``build()`` (None: no state)."""
    if workers is None and address is None:
        return SerialExecutor()
    return RayExecutor(build, workers=workers, address=address)


def run_units(units: Sequence[Unit], tally: dict, *, executor=None, state: Any = None, progress: bool = False,
              description: str = "units", on_unit: Callable[[Unit], None] | None = None) -> list[dict]:
    """Every unit's saved dict, in the order of ``units``: reused from disk when made under the same settings, else
    computed by ``executor`` (default: serial, on ``state``) and written atomically as it arrives (then
    ``on_unit(unit)`` is called). A unit whose task returned ``"arrays"`` comes back with them (tensors, read from
    its :attr:`Unit.arrays_path` when reused).

    ``tally`` counts ``computed``, ``reused`` and ``recomputed`` units as :func:`diffmem.io.resumable_unit` does."""
    executor = executor or SerialExecutor()
    done: list[dict | None] = [_saved(u, tally) for u in units]
    todo = [k for k, d in enumerate(done) if d is None]
    if not todo:
        return done
    with progress_bar(progress and len(todo) > 0, "workers {task.fields[alive]}") as bar:
        job = bar.add_task(description, total=len(todo), alive=executor.alive())
        for j, payload in executor.imap([units[k].task for k in todo], state):
            unit = units[todo[j]]
            done[todo[j]] = _write(unit, payload)
            tally["computed"] += 1
            if on_unit is not None:
                on_unit(unit)
            bar.update(job, advance=1, alive=executor.alive())
    return done


def _saved(unit: Unit, tally: dict) -> dict | None:
    """:func:`~diffmem.io.saved_unit` with the unit's tensors read back under ``"arrays"``; a stamp whose tensors
    are missing, unreadable or other than it names is recomputed (counted so)."""
    stored = saved_unit(unit.path, unit.settings, tally)
    if stored is None or "arrays" not in stored:
        return stored
    try:
        arrays = read_arrays(unit.arrays_path)
    except (FileNotFoundError, ValueError):
        arrays = None
    if arrays is None or sorted(arrays) != stored["arrays"]:
        tally["reused"] -= 1
        tally["recomputed"] += 1
        return None
    return {**stored, "arrays": arrays}


def _write(unit: Unit, payload: dict) -> dict:
    """Write one computed unit: its tensors first (if any), then the JSON stamp that marks it finished."""
    saved = {"settings": unit.settings, **payload}
    arrays = payload.get("arrays")
    if arrays is None:
        write_json(unit.path, saved)
        return saved
    if not isinstance(arrays, dict) or not arrays:
        raise ValueError(f"unit {unit.path}: 'arrays' must be a non-empty dict of tensors, got {type(arrays)}")
    write_arrays(unit.arrays_path, arrays)
    write_json(unit.path, {**saved, "arrays": sorted(arrays)})
    return saved
