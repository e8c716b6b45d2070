"""A small Python client for the daemon's gRPC API; the CLI is built on it, scripts can use it too.

from vibrary.clients.client import Client
with Client() as c:              # the daemon of $VIBRARY_HOME, over its Unix socket
    c.add_watch("/samples")
    for f in c.search([["kick"]]):
        print(f.path, f.tags[0].tag)
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from vibrary.daemon import config
from vibrary.daemon.folders import indexed_path
from vibrary.proto import daemon_pb2 as pb
from vibrary.proto import daemon_pb2_grpc as pb_grpc


class DaemonNotRunning(ConnectionError):
    pass


class Client:
    def __init__(self, target: str = "", token: str = "", timeout: float = 30.0, home_dir: Path | None = None) -> None:
        """target: "" for the home's Unix socket, or HOST:PORT (then token is required by the daemon)."""
        if not target:
            target = config.unix_target(config.socket_path(home_dir or config.home()))
        self.target = target
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.DaemonStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request: object, timeout: float | None = None) -> Any:
        try:
            return getattr(self.stub, method)(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise _translate(e, self.target) from None

    def _stream(self, method: str, request: object, timeout: float | None = None) -> Iterator:
        try:
            yield from getattr(self.stub, method)(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise _translate(e, self.target) from None

    # -- calls ---------------------------------------------------------------------------------------
    def is_running(self) -> bool:
        """Whether a daemon answers there; one that refuses this client's token runs all the same."""
        try:
            self.status(timeout=2.0)
        except DaemonNotRunning:
            return False
        except DaemonError as e:
            if e.code != grpc.StatusCode.UNAUTHENTICATED:
                raise
        return True

    def status(self, timeout: float | None = None) -> pb.Status:
        return self._call("GetStatus", pb.GetStatusRequest(), timeout)

    def add_watch(self, folder: str) -> list[str]:
        return list(self._call("AddWatch", pb.WatchRequest(path=indexed_path(folder))).paths)

    def remove_watch(self, folder: str) -> list[str]:
        return list(self._call("RemoveWatch", pb.WatchRequest(path=indexed_path(folder))).paths)

    def watches(self) -> list[str]:
        return list(self.watch_list().paths)

    def watch_list(self) -> pb.WatchList:
        """The watch folders, and which of them are not there now (`missing`)."""
        return self._call("ListWatches", pb.ListWatchesRequest())

    def search(
        self,
        all_of: Sequence[Sequence[str]] = (),
        none_of: Sequence[str] = (),
        min_score: float = 0.0,
        under: str = "",
        model: str = "",
        limit: int = 0,
        best_first: bool = False,
    ) -> Iterator[pb.FileTags]:
        request = pb.SearchRequest(
            all_of=[pb.AnyOf(tags=list(g)) for g in all_of],
            none_of=list(none_of),
            min_score=min_score,
            path_prefix=indexed_path(under) if under else "",
            model=model,
            limit=limit,
            best_first=best_first,
        )
        return self._stream("Search", request, self.timeout)

    def tags(self, paths: Sequence[str]) -> Iterator[pb.FileTags]:
        return self._stream("GetTags", pb.GetTagsRequest(paths=[indexed_path(p) for p in paths]), self.timeout)

    def counts(self, model: str = "") -> list[pb.TagCount]:
        return list(self._call("CountTags", pb.CountTagsRequest(model=model)).counts)

    def tag(self, paths: Sequence[str], timeout: float = 600.0) -> Iterator[pb.FileTags]:
        return self._stream("Tag", pb.TagRequest(paths=[indexed_path(p) for p in paths]), timeout)

    def events(self) -> Iterator[pb.Event]:
        """Endless stream of daemon events; cancel by closing the client."""
        return self._stream("Events", pb.EventsRequest())

    def models(self) -> list[pb.Model]:
        return list(self._call("ListModels", pb.ListModelsRequest()).models)

    def activate(self, name: str, version: int = 0) -> list[pb.Model]:
        return list(self._call("ActivateModel", pb.ModelRef(name=name, version=version)).models)

    def deactivate(self, name: str, version: int = 0) -> list[pb.Model]:
        return list(self._call("DeactivateModel", pb.ModelRef(name=name, version=version)).models)

    def pause(self) -> pb.Status:
        return self._call("Pause", pb.PauseRequest())

    def resume(self) -> pb.Status:
        return self._call("Resume", pb.PauseRequest())

    def failed(self, limit: int = 0) -> list[pb.FileTags]:
        """The files that most recently failed, newest first (limit 0: the daemon's default, 50)."""
        return list(self._stream("ListFailed", pb.ListFailedRequest(limit=limit), self.timeout))

    # -- your own tags -------------------------------------------------------------------------------
    def suggest(self, paths: Sequence[str], timeout: float = 600.0) -> pb.Suggestions:
        return self._call("SuggestLabels", pb.SuggestRequest(paths=[os.path.abspath(p) for p in paths]), timeout)

    def synonyms(self) -> list[pb.Synonym]:
        return list(self._call("ListSynonyms", pb.ListSynonymsRequest()).synonyms)

    def add_synonyms(self, pairs: Sequence[tuple[str, str]]) -> list[pb.Synonym]:
        request = pb.Synonyms(synonyms=[pb.Synonym(alias=a, tag=t) for a, t in pairs])
        return list(self._call("AddSynonyms", request).synonyms)

    def create_dataset(
        self, name: str, files: Sequence[tuple[str, str]], timeout: float | None = None, add: bool = False
    ) -> Iterator[pb.DatasetProgress]:
        """Progress messages; the last one carries the dataset (and, with `add`, how many clips joined it)."""
        labelled = [pb.LabelledFile(path=os.path.abspath(p), tag=t) for p, t in files]
        return self._stream("CreateDataset", pb.CreateDatasetRequest(name=name, files=labelled, add=add), timeout)

    def edit_dataset(
        self,
        name: str,
        rename: Sequence[tuple[str, str]] = (),
        drop: Sequence[str] = (),
        relabel: Sequence[tuple[str, str]] = (),
    ) -> pb.Dataset:
        request = pb.EditDatasetRequest(
            name=name,
            rename=[pb.EditDatasetRequest.Rename(tag=a, to=b) for a, b in rename],
            drop=list(drop),
            relabel=[pb.LabelledFile(path=os.path.abspath(p), tag=t) for p, t in relabel],
        )
        return self._call("EditDataset", request)

    def dataset(self, name: str) -> pb.Dataset:
        return self._call("GetDataset", pb.DatasetRef(name=name))

    def datasets(self) -> list[pb.Dataset]:
        return list(self._call("ListDatasets", pb.ListDatasetsRequest()).datasets)

    def delete_dataset(self, name: str) -> list[pb.Dataset]:
        return list(self._call("DeleteDataset", pb.DatasetRef(name=name)).datasets)

    def train(
        self,
        dataset: str,
        name: str = "",
        trainer: str = "",
        base: str = "",
        options: str = "{}",
        token: str = "",
        confirm_cost: bool = False,
        timeout: float | None = None,
    ) -> Iterator[pb.TrainProgress]:
        """Progress until the job ends; leaving early does not stop the training (cancel_training does)."""
        request = pb.TrainRequest(
            dataset=dataset,
            name=name,
            trainer=trainer,
            base=base,
            options=options,
            token=token,
            confirm_cost=confirm_cost,
        )
        return self._stream("Train", request, timeout)

    def cancel_training(self) -> pb.TrainProgress:
        return self._call("CancelTraining", pb.CancelTrainingRequest())


class DaemonError(RuntimeError):
    """The daemon refused the call; str() is its reason."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


def _translate(e: grpc.RpcError, target: str) -> Exception:
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = e.details() if hasattr(e, "details") else str(e)
    if code == grpc.StatusCode.UNAVAILABLE:
        where = urllib.parse.unquote(target.removeprefix("unix:"))  # the socket's path, not its URI
        return DaemonNotRunning(f"no daemon answers at {where}; start it with `vibrary daemon`")
    return DaemonError(code, details or code.name)
