"""Worker threads and the batching inference thread between the work queue and the index.

decode + spectrogram run in `workers` threads (soundfile, soxr, numpy's FFT and onnxruntime all release
the GIL, so threads use every core without the memory of extra processes); a single thread batches the
clips for onnxruntime and hands each finished batch to a sink (the index in the daemon, stdout in
`vibrary tag`). At most `queue_size` files are in flight, so memory stays flat whatever is queued.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from .cache import SpectrogramCache
from .decode import DecodeError, FileVanished, TryLater
from .features import Fingerprint, read
from .index import MODEL_FAILED, RETRY_FOR_S, Job, Result
from .infer import Model, ranked_tags
from .spectrogram import SpectrogramParams, heard_in

log = logging.getLogger(__name__)

_STOP = object()


@dataclass(frozen=True)
class ActiveModel:
    id: int
    ref: str
    model: Model


# How long the inference thread waits for a batch to fill while more files are on their way. Each batch
# is one index transaction and one cache transaction, and files came one or two at a time (0.2-0.3 ms of
# SQLite per file); a lone file (nothing else in flight) never waits.
FILL_WAIT_S = 0.02

# A model that fails on this many files, in this many batches at least, having scored none since it was
# loaded, fails on real audio (it passed the install's check, on silence): it is set aside (Pipeline.failing)
# and the files get the other models' tags. A model left active that failed every file failed the whole
# library, every other model's tags lost with them. One that has scored a file and fails on another fails
# that file, naming itself; so does one with no other model beside it (set aside, it left files untagged).
FAILS_AFTER = 3
FAILS_IN = 2  # (one batch of files a model cannot take, all near-silent say, is no verdict on it)


@dataclass
class _Prepared:
    result: Result
    specs: dict[SpectrogramParams, np.ndarray]
    todo: list[ActiveModel]
    fresh: list[tuple[bytes, SpectrogramParams, np.ndarray]] = field(default_factory=list)
    failed_by: dict[int, str] = field(default_factory=dict)  # model id → its error on this file


class Pipeline:
    def __init__(
        self,
        models: Sequence[ActiveModel],
        sink: Callable[[list[Result]], None],
        *,
        workers: int,
        batch_size: int,
        queue_size: int,
        store_min_score: float,
        cache: SpectrogramCache | None = None,
        models_done: Callable[[bytes], set[int]] | None = None,
        on_failing: Callable[[str], None] = lambda ref: None,
        fail_files: bool = True,
    ) -> None:
        """`fail_files`: a model that fails on a file fails it, to be read again once mended (the daemon); False:
        the file keeps the other models' tags and the failure is said in Result.model_errors (`vibrary tag`,
        which reads each file once: a broken model beside the demo lost every file's tags until set aside)."""
        self._models_lock = threading.Lock()  # the batcher sets a model aside as another thread loads models
        self.models = list(models)
        self._on_failing = on_failing
        self._fail_files = fail_files
        self._sink = sink
        self._batch_size = batch_size
        self._store_min = store_min_score
        self._cache = cache
        self._models_done = models_done
        self._slots = threading.BoundedSemaphore(queue_size)
        self._jobs: queue.Queue[object] = queue.Queue()
        self._ready: queue.Queue[object] = queue.Queue()
        self._idle = threading.Condition()
        self._in_flight = 0
        self.counters = {"decoded": 0, "from_cache": 0, "reused": 0}
        self._cache_error = ""  # the cache's last error, said once
        # one worker per core already: a multi-threaded BLAS inside each would only fight over them
        threadpool_limits(1, user_api="blas")
        self._workers = [threading.Thread(target=self._work, name=f"worker-{i}", daemon=True) for i in range(workers)]
        self._batcher = threading.Thread(target=self._batch, name="infer", daemon=True)
        for t in [*self._workers, self._batcher]:
            t.start()

    @property
    def models(self) -> list[ActiveModel]:
        return self._models

    @models.setter
    def models(self, models: Sequence[ActiveModel]) -> None:
        """The models to run: each loaded anew has a new chance, one set aside before included."""
        with self._models_lock:
            self._models = list(models)
            self.failing: dict[int, tuple[str, str]] = {}  # model id → (ref, error) of those set aside
            self._failed: dict[int, tuple[int, int]] = {}  # model id → (files, batches) failed, none scored
            self._scored: set[int] = set()

    def let_go(self, ids: Collection[int]) -> None:
        """Stop running these models (versions that stood in for others: Index.hand_over); the others go on as
        they were, those set aside included."""
        with self._models_lock:  # (failing replaced, not changed in place: other threads read it unlocked)
            self._models = [m for m in self._models if m.id not in ids]
            self.failing = {i: said for i, said in self.failing.items() if i not in ids}
            self._failed = {i: n for i, n in self._failed.items() if i not in ids}
            self._scored = self._scored - set(ids)

    def keep_aside(self, failing: dict[int, tuple[str, str]]) -> None:
        """Models set aside by an earlier run of the daemon, the active models as they were: aside again,
        while another is loaded to tag the files."""
        with self._models_lock:
            kept = [m for m in self._models if m.id not in failing]
            if kept:
                self.failing = {m.id: failing[m.id] for m in self._models if m.id in failing}
                self._models = kept

    # -- feeding -------------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Blocks while `queue_size` files are already in flight."""
        self._slots.acquire()
        with self._idle:
            self._in_flight += 1
        self._jobs.put(job)

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def close(self, drop_queued: bool = False) -> None:
        """Stop once the files in flight are done; `drop_queued`: those not yet read are dropped (Ctrl-C)."""
        while drop_queued:
            try:
                self._jobs.get_nowait()
            except queue.Empty:
                break
            self._slots.release()
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()
        for _ in self._workers:
            self._jobs.put(_STOP)
        for t in self._workers:
            t.join()
        self._ready.put(_STOP)
        self._batcher.join()

    # -- workers: file → spectrograms ----------------------------------------------------------------
    def _work(self) -> None:
        while (job := self._jobs.get()) is not _STOP:
            assert isinstance(job, Job)
            try:
                self._ready.put(self._prepare(job))
            except Exception as e:  # a bug must cost one file, never the worker
                log.exception("unexpected error on %s", job.path)
                self._ready.put(_Prepared(Result(job, error=f"internal error: {e}"), {}, []))

    def _prepare(self, job: Job) -> _Prepared:
        result = Result(job)
        models = self.models
        todo: list[ActiveModel] = []

        def wanted(hashed: Fingerprint) -> Iterable[SpectrogramParams]:
            result.size, result.mtime_ns, result.inode, result.hash, result.links = hashed
            done = self._models_done(hashed.hash) if self._models_done else set()
            todo[:] = [m for m in models if m.id not in done]
            return [m.model.info.params for m in todo]

        try:
            _, specs, fresh = read(job.path, wanted, self._cache)
        except DecodeError as e:
            # refused before the hash, or seen otherwise since (read again, it was refused at its second look):
            # the file as it was when judged
            if result.hash is None or e.stamp not in ((-1, -1), (result.size, result.mtime_ns)):
                result.size, result.mtime_ns = e.stamp
                result.inode, result.hash, result.links = -1, None, 1
            result.error = str(e)
            result.vanished = isinstance(e, FileVanished)
            result.retry_for = RETRY_FOR_S if isinstance(e, TryLater) else 0.0
            return _Prepared(result, {}, [])
        outcome = "decoded" if fresh else "from_cache" if todo else "reused"
        before = (job.hash, job.size, job.mtime_ns)
        result.unchanged = outcome == "reused" and before == (result.hash, result.size, result.mtime_ns)
        with self._idle:
            self.counters[outcome] += 1
        return _Prepared(result, specs, todo, fresh)  # cached by the inference thread, a batch at a time

    # -- the inference thread: batches → models → sink -----------------------------------------------
    def _batch(self) -> None:
        stopping = False
        while not stopping:
            item = self._ready.get()
            if item is _STOP:
                return
            batch = [item]
            deadline = time.monotonic() + FILL_WAIT_S
            while len(batch) < self._batch_size:
                try:
                    item = self._ready.get_nowait()
                except queue.Empty:
                    wait = deadline - time.monotonic()
                    if self._in_flight <= len(batch) or wait <= 0:
                        break
                    try:
                        item = self._ready.get(timeout=wait)
                    except queue.Empty:
                        break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            prepared = [b for b in batch if isinstance(b, _Prepared)]
            try:
                self._store_spectrograms(prepared)
                self._infer(prepared)
            except Exception as e:  # every file still reaches the sink: one that did not would never be fed again
                log.exception("batch of %d files failed", len(prepared))
                for p in prepared:
                    p.result.error, p.result.tags = p.result.error or f"could not be tagged: {e}", {}
            try:
                self._sink([p.result for p in prepared])
            except Exception:
                log.exception("could not store a batch of %d files; they stay pending", len(prepared))
            finally:
                for _ in prepared:
                    self._slots.release()
                with self._idle:
                    self._in_flight -= len(prepared)
                    self._idle.notify_all()

    def _store_spectrograms(self, batch: list[_Prepared]) -> None:
        """Cache a batch's fresh spectrograms in one transaction, before its files count as indexed (so a
        model activated next finds them); a cache that cannot be written costs speed later, not files."""
        fresh = [entry for p in batch for entry in p.fresh]
        if self._cache is None or not fresh:
            return
        try:
            self._cache.put_many(fresh)
        except sqlite3.OperationalError as e:  # (a full disk): said once while it lasts, not a traceback a batch
            if str(e) != self._cache_error:
                self._cache_error = str(e)
                log.warning("could not cache spectrograms (%s); files are tagged all the same", e)
            return
        except Exception:
            log.exception("could not cache %d spectrograms", len(fresh))
        self._cache_error = ""

    def _infer(self, batch: list[_Prepared]) -> None:
        models = {m.id: m for p in batch for m in p.todo if m.id not in self.failing}
        for model in models.values():
            params = model.model.info.params
            items = [p for p in batch if model in p.todo and params in p.specs]
            if not items:
                continue
            for i, row in self._predict(model, [p.specs[params] for p in items]):
                p = items[i]
                if not isinstance(row, Exception) and not np.isfinite(row[0]).all():  # SQLite stores no NaN
                    row = ValueError("its scores are not numbers (NaN or infinite)")
                if isinstance(row, Exception):  # the file fails, not the batch: it would stay pending for good
                    p.failed_by[model.id] = str(row)
                elif not p.result.error:
                    scores, familiar = row
                    heard = heard_in(p.specs[params])
                    p.result.tags[model.id] = (
                        ranked_tags(scores, model.model.info.classes, self._store_min) if heard else []
                    )
                    if not familiar:
                        p.result.unfamiliar.add(model.id)
            self._judge(model, [p for p in items if model.id in p.failed_by], len(items))
        failing = self.failing
        for p in batch:  # a model set aside meanwhile fails no file (another model is there: it tagged it)
            failed = [(i, e) for i, e in p.failed_by.items() if i not in failing]
            if failed and not p.result.error and (self._fail_files or not p.result.tags):
                p.result.error = f"{MODEL_FAILED.format(ref=models[failed[0][0]].ref)}{failed[0][1]}"
                p.result.tags.clear()
            elif failed and not p.result.error:
                p.result.model_errors = {i: f"{MODEL_FAILED.format(ref=models[i].ref)}{e}" for i, e in failed}

    def _judge(self, model: ActiveModel, failed: list[_Prepared], tried: int) -> None:
        """Set a model aside once it has failed FAILS_AFTER files in FAILS_IN batches, scored none since it
        was loaded, and another model is there to tag the files."""
        with self._models_lock:
            if model.id in self._scored or model not in self._models:  # (loaded since: the new one is judged)
                return
            if len(failed) < tried:
                self._scored.add(model.id)
                return
            files, batches = self._failed.get(model.id, (0, 0))
            self._failed[model.id] = files, batches = files + len(failed), batches + 1
            if files < FAILS_AFTER or batches < FAILS_IN or len(self._models) < 2:
                return
            error = failed[-1].failed_by[model.id]
            self.failing = {**self.failing, model.id: (model.ref, error)}
            self._models = [m for m in self._models if m.id != model.id]
        said = "the other models tag the files (`vibrary models deactivate %s`)"
        log.warning("model %s failed on every file it was given (%s): set aside; " + said, model.ref, error, model.ref)
        self._on_failing(model.ref)

    @staticmethod
    def _predict(
        model: ActiveModel, specs: list[np.ndarray]
    ) -> Iterator[tuple[int, tuple[np.ndarray, bool] | Exception]]:
        """(position, (scores, familiar)) for the whole batch at once; when that fails, file by file, so one
        file that a model cannot take gets its own error and the rest of the batch is tagged."""
        try:
            scores, familiar = model.model.predict_familiar(np.stack(specs))
            rows = list(zip(scores, familiar.tolist(), strict=True))  # whole before any is given out
        except Exception as e:  # (a model's own failure: no traceback of ours)
            if len(specs) == 1:  # ("failed on a batch of 1; trying the files one by one", and the same again)
                yield 0, e
                return
            log.warning("%s failed on a batch of %d (%s); trying the files one by one", model.ref, len(specs), e)
        else:
            yield from enumerate(rows)
            return
        for i, spec in enumerate(specs):
            try:
                scores, familiar = model.model.predict_familiar(spec[None])
                yield i, (scores[0], bool(familiar[0]))
            except Exception as e:
                yield i, e
