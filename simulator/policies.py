"""Policies addressed by one string: a heuristic, a behaviour recipe, an ONNX file or a gRPC endpoint.

``resolve(spec)`` is the only way the operator tools (``dispatch ab``, ``dispatch replay``) turn a
``--policy`` argument into a :class:`~dispatch.policy.Policy`:

- ``nearest``, ``reyes``, ``assignment``, ``random``: the heuristics;
- ``reyes-soft``, ``nearest-noisy``, ...: stochastic behaviour recipes (exact per-courier
  probabilities); ``reyes-soft:greedy`` follows the recipe's heuristic without exploring;
- ``path/to/model.onnx``: an exported model run in-process with ONNX Runtime;
- ``grpc://host:port[/model]``: the decision service, through :class:`RemotePolicy`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dispatch.candidates import CandidateConfig
from dispatch.policy import Decision, Policy
from dispatch.snapshot import Snapshot

GRPC_PREFIX = "grpc://"
GREEDY_SUFFIX = ":greedy"

Resolver = Callable[[str], Policy]


class PolicySpecError(ValueError):
    """A policy spec that names nothing this program can run."""


class RemotePolicyError(RuntimeError):
    """The decision service did not answer (its status code and details, as one picklable line)."""


def describe() -> str:
    """One line listing every accepted form of a policy spec."""
    from simulator.behaviour import RECIPES
    from simulator.heuristics import NAMES

    return (
        f"heuristics {', '.join(NAMES)}; recipes {', '.join(RECIPES)} (add {GREEDY_SUFFIX} for no exploration); "
        f"a path to an .onnx model; or {GRPC_PREFIX}host:port[/model]"
    )


def resolve(spec: str, threads: int = 0, candidates: CandidateConfig | None = None) -> Policy:
    """The policy a spec names; PolicySpecError says what forms are accepted.

    ``threads`` bounds ONNX Runtime's intra-op threads (0: all usable cores); parallel runners pass 1
    so that worker processes do not oversubscribe the cores. ``candidates`` is the candidate set of
    behaviour recipes (replay passes the log's, so a recipe sees the candidates it logged).
    """
    from simulator.behaviour import RECIPES, BehaviourPolicy
    from simulator.heuristics import NAMES, make

    spec = spec.strip()
    if spec.startswith(GRPC_PREFIX):
        return RemotePolicy(spec)
    if spec in NAMES:
        return make(spec)
    base = spec.removesuffix(GREEDY_SUFFIX)
    if base in RECIPES:
        return BehaviourPolicy(base, candidates, greedy=spec.endswith(GREEDY_SUFFIX))
    if spec.endswith(".onnx") or Path(spec).is_file():
        from dispatch.model import ModelError
        from dispatch.onnx_policy import OnnxPolicy

        if not Path(spec).is_file():
            raise PolicySpecError(f"policy {spec!r}: no such ONNX file")
        try:
            return OnnxPolicy(spec, threads=threads)
        except ModelError as exc:
            raise PolicySpecError(f"policy {spec!r}: {exc}") from None
    raise PolicySpecError(f"policy {spec!r} is not known; expected {describe()}")


def port_problem(address: str) -> str | None:
    """Why the port of ``host:port`` is not a TCP port, or None (also for targets without a numeric port, such
    as ``unix:`` paths, which gRPC resolves itself). gRPC would wrap 99999 round to another port and name that
    one in its error."""
    _, sep, port = address.rpartition(":")
    if sep and port.isdigit() and not 1 <= int(port) <= 65535:
        return f"port {port} is not 1 to 65535"
    return None


def parse_grpc(spec: str) -> tuple[str, str | None]:
    """``grpc://host:port[/model]`` as (``host:port``, model or None)."""
    if not spec.startswith(GRPC_PREFIX):
        raise PolicySpecError(f"policy {spec!r}: a remote policy starts with {GRPC_PREFIX}")
    rest = spec[len(GRPC_PREFIX) :]
    address, _, model = rest.partition("/")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise PolicySpecError(f"policy {spec!r}: expected {GRPC_PREFIX}host:port[/model]")
    if problem := port_problem(address):
        raise PolicySpecError(f"policy {spec!r}: {problem}")
    return address, (model or None)


class RemotePolicy:
    """A policy answered by the gRPC decision service (issue 6), through ``service.client``.

    ``service.client`` is imported lazily, so the simulator never needs grpc: ``DispatchClient``
    sends the snapshot as a ``DecideRequest`` (selecting ``/model`` when the spec names one) and
    ``response_to_action`` maps the answer back onto the snapshot's indices. Transport errors raise
    (they stop A/B and replay runs, which resume on rerun). A missing module raises a clear error.
    """

    def __init__(self, spec: str, client: Any | None = None) -> None:
        self.spec = spec
        self.address, self.model = parse_grpc(spec)
        self.name = spec
        self._client = client

    def _connect(self) -> Any:
        """The client, created on first use (so a policy object can be built before the service is up)."""
        if self._client is None:
            try:
                from service import client as client_mod  # type: ignore[attr-defined]
            except ImportError as exc:
                raise PolicySpecError(
                    f"policy {self.spec!r} needs the gRPC client (service.client, install the 'serve' extra): {exc}"
                ) from None
            # A short per-call timeout: a dead endpoint must stop a run quickly, not hang it.
            self._client = client_mod.DispatchClient(self.address, timeout=30.0)
        return self._client

    def reset(self, seed: int) -> None:
        """The service is stateless per request: nothing to seed."""

    def decide(self, snapshot: Snapshot) -> Decision:
        """Ask the service for the joint action of this snapshot."""
        client = self._connect()  # first: it explains a missing gRPC install
        import grpc

        from service.client import response_to_action

        try:
            response = client.decide(snapshot, model_name=self.model or "")
        except grpc.RpcError as exc:
            # gRPC's error objects hold locks: passed as they are from a worker process they arrive as a
            # pickling TypeError, and the operator never learns that the service was down.
            code = getattr(exc, "code", lambda: None)()
            details = getattr(exc, "details", lambda: "")() or ""
            status = getattr(code, "name", "error")
            raise RemotePolicyError(f"policy {self.spec!r} at minute {snapshot.time}: {status}: {details}") from None
        return Decision(response_to_action(response, snapshot))

    def close(self) -> None:
        """Close the channel if the client has one."""
        close = getattr(self._client, "close", None)
        if callable(close):
            close()
        self._client = None
