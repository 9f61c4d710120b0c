"""A rollout engine whose front-end runs in a child process of another Python: ``$MT_VLLM_PYTHON``.

The project's image keeps vLLM, which pins its own torch, in a virtualenv of its own (``/opt/vllm``, named by
``$MT_VLLM_PYTHON``); the trainers run the image's torch and Transformer Engine and cannot import vLLM. Ray engine
actors already run under that interpreter. The engines whose front-end would live in the caller's process -- a
``local`` engine, and the ``colocated`` engines a node's first trainer rank starts on its node's GPUs -- run in a
child process of it instead (:func:`engine_python` says when), behind an :class:`EngineProcess`, which has the
interface of the engine it stands for (``RolloutEngine`` plus the weight-sync endpoint ``num_workers`` /
``rpc_async``), so a :class:`~megatron_tulu.rollout.colocated.ColocatedEngineGroup` or the RLVR loop use it as they
use an engine here. Weights never cross the pipe: a vLLM engine's workers receive them over the weight-sync groups
(IPC handle for a worker on the caller's GPU, broadcast for the others) exactly as when the front-end is in-process;
only the calls, the prompts and the generations do.

Protocol: one ``socketpair``; the child, the leader of a process group of its own, gets its end as an inherited file
descriptor. Each message is a pickled tuple (plain ``pickle``: a tensor travels by value, never as a shared-memory
handle of the wrong strategy). The caller sends ``(call id, method, args)``; the child runs each call in a thread of
its own (a weight-sync receive runs while the caller broadcasts; the caller never runs two generations on one engine
at once; ``shutdown`` runs in its main loop) and answers ``(call id, ok, value)``. Call 0 is the start-up: the child
builds the engine and answers with what the caller needs to know about it. Every call is bounded by ``timeout_s``
(:class:`~megatron_tulu.rollout.base.EngineRPCTimeout`); a child that dies fails every pending and later call at
once, naming its exit code (:class:`EngineProcessDied`). The child exits, shutting its engine down, when the caller's end closes (the caller
exited or was killed), so no engine outlives its trainer on a GPU; a shutdown that does not finish in time ends with
the child's whole process group signalled (vLLM's engine-core processes do not watch for their parent's death).

GPU-only, not run on CPU: the child's ``CUDA_VISIBLE_DEVICES`` (colocated engine g: the GPUs of the node's trainer
ranks ``[g*tp, (g+1)*tp)``) and CUDA IPC handles opened by a torch of another version than the sender's (the
image's two environments); the CPU tests run the same code with a shared-memory handle.
"""

from __future__ import annotations

import builtins
import concurrent.futures as cf
import importlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterable
from multiprocessing.connection import Connection
from pathlib import Path

import torch

from megatron_tulu.rollout.base import SHUTDOWN_TIMEOUT_S, EngineRPCTimeout, Generation, RolloutEngine, SamplingConfig

log = logging.getLogger(__name__)
_REPO_ROOT = str(Path(__file__).resolve().parents[2])  # the child imports megatron_tulu from this checkout


class EngineProcessDied(RuntimeError):
    """The engine's child process exited (crashed, was killed, or lost its connection)."""


def engine_python() -> str | None:
    """The interpreter for vLLM front-ends that would otherwise run in this process: ``$MT_VLLM_PYTHON`` when it is
    set and names another interpreter than this one (in the image: ``/opt/vllm/bin/python``; inside a process that
    already is it -- a Ray engine actor, an engine child -- None). Paths are compared as given, not resolved: two
    virtualenvs usually link the same base interpreter."""
    python = os.environ.get("MT_VLLM_PYTHON")
    if not python or os.path.abspath(python) == os.path.abspath(sys.executable):
        return None
    return python


class EngineProcess(RolloutEngine):
    """An engine (``build_local_engine(kind, model_dir, engine_kwargs)``) in a child process of ``python``.

    The child inherits this process's environment (a colocated engine's ``CUDA_VISIBLE_DEVICES`` is set there while
    it starts, ``rollout.colocated``). ``timeout_s`` bounds the start-up and every call. ``sync_bucket_bytes``: bucket
    size of :meth:`update_weights` (a ``local`` vLLM engine's own gloo group, as ``VLLMEngine.update_weights``).

    The child leads a process group of its own (``start_new_session``): vLLM's engine-core and worker processes are
    in it, so stopping the child stops them too (they do not watch for their parent's death), and a signal meant for
    the trainer's group (Ctrl-C, a preemption warning) does not reach the engine. Its exit is watched directly, not
    only through the socket, whose other end vLLM's forked processes may hold open.
    """

    def __init__(self, kind: str, model_dir, engine_kwargs: dict, python: str, timeout_s: float = 1800.0,
                 sync_bucket_bytes: int = 64 * 2**20):
        self.kind, self.python, self.timeout_s = kind, python, float(timeout_s)
        self.sync_bucket_bytes = int(sync_bucket_bytes)
        self._pending: dict[int, cf.Future] = {}
        self._state = threading.Lock()  # guards _pending, _next_id, _dead
        self._send_lock = threading.Lock()  # one message at a time; the connection is closed under it
        self._next_id = 0
        self._dead: str | None = None
        self._own_sync = None
        self._exited = threading.Event()  # set by _watch, with _exit_code
        self._exit_code: int | None = None
        self._stopped = False
        ours, theirs = socket.socketpair()
        child_env = dict(os.environ)
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO_ROOT, child_env.get("PYTHONPATH")) if p)
        try:
            self.proc = subprocess.Popen([python, "-m", "megatron_tulu.rollout.engine_process", str(theirs.fileno())],
                                         pass_fds=(theirs.fileno(),), env=child_env, start_new_session=True)
        except OSError as e:
            ours.close()
            raise EngineProcessDied(f"cannot start the engine process with {python} ($MT_VLLM_PYTHON): {e}") from e
        finally:
            theirs.close()
        self.pid = self.proc.pid
        self._sock = ours  # shutdown() of it wakes the reader thread's blocked receive (a close() would not)
        self._conn = Connection(os.dup(ours.fileno()))
        self._reader = threading.Thread(target=self._read, name=f"engine-process-{self.pid}", daemon=True)
        self._reader.start()
        threading.Thread(target=self._watch, name=f"engine-process-{self.pid}-exit", daemon=True).start()
        try:  # call 0: the child builds the engine
            info = self._wait(self._submit("start", kind, str(model_dir), dict(engine_kwargs)), "start-up")
        except BaseException:
            self._stop(grace_s=0.0)
            raise
        self.num_workers = int(info["num_workers"])
        self.supports_regex = bool(info["supports_regex"])
        log.info("%s engine (front-end pid %d, %s) started from %s", kind, self.pid, python, model_dir)

    # ------------------------------------------------------------------ transport

    def _watch(self) -> None:
        """When the child exits, note its exit code and end the reader's receive (the stream may stay open in its
        orphans). The child is left unreaped (``WNOWAIT``) until :meth:`_stop`: while it is a zombie no process can
        take its pid, so signalling its process group there cannot reach an unrelated one."""
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
            self._exit_code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
        except ChildProcessError:  # reaped elsewhere
            self._exit_code = self.proc.returncode
        self._exited.set()
        self._hang_up()

    def _hang_up(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _read(self) -> None:
        """The reader thread: hands each answer to its call's future; at end of stream (or on any failure of its
        own) fails every pending and later call, naming the child's exit code when it has one."""
        why = "its connection closed"
        try:
            while True:
                call_id, ok, value = pickle.loads(self._conn.recv_bytes())
                with self._state:
                    future = self._pending.pop(call_id, None)
                if future is not None:
                    future.set_result(value) if ok else future.set_exception(_rebuild_error(self.pid, value))
        except (EOFError, OSError):
            pass
        except Exception as e:  # noqa: BLE001 - a message this side cannot read: the stream is unusable
            why = f"its answer could not be read ({type(e).__name__}: {e})"
        finally:
            if self._exited.wait(timeout=10):
                why = f"it exited with code {self._exit_code}"
            self._fail_all(why)

    def _fail_all(self, why: str) -> None:
        with self._state:
            self._dead = self._dead or why
            pending, self._pending = list(self._pending.values()), {}
        for future in pending:
            future.set_exception(self._died())

    def _died(self) -> EngineProcessDied:
        return EngineProcessDied(f"engine process {self.pid} ({self.python}): {self._dead}")

    def _submit(self, method: str, *args) -> cf.Future:
        future = cf.Future()
        future.set_running_or_notify_cancel()  # a caller's cancel() cannot make the reader's set_result fail
        with self._state:
            if self._dead:
                future.set_exception(self._died())
                return future
            call_id, self._next_id = self._next_id, self._next_id + 1
            self._pending[call_id] = future
        data = pickle.dumps((call_id, method, args), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            with self._send_lock:
                self._conn.send_bytes(data)
        except OSError:
            pass  # the child is gone or going: the reader fails this call with its exit code
        return future

    def _wait(self, future: cf.Future, what: str, timeout_s: float | None = None):
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        try:
            return future.result(timeout=timeout_s)
        except cf.TimeoutError as e:
            raise EngineRPCTimeout(f"rollout engine {what} (process {self.pid}): no answer within "
                                   f"{timeout_s:.0f}s") from e

    def _call(self, method: str, *args):
        return self._wait(self._submit(method, *args), args[0] if method == "call" else method)

    # ------------------------------------------------------------------ the engine's interface

    def generate(self, prompt_token_ids: list[list[int]], sampling: SamplingConfig) -> list[Generation]:
        from megatron_tulu.rollout.weight_sync import refuse_if_stale

        refuse_if_stale(self)  # a sync of this engine's own group that failed midway (local placement)
        return self._call("generate", [list(map(int, p)) for p in prompt_token_ids], sampling)

    def rpc_async(self, method: str, *args, timeout: float | None = None) -> cf.Future:  # noqa: ARG002
        """``collective_rpc(method, args)`` on the child's vLLM workers (the weight-sync extension's methods); the
        caller bounds its wait (``WeightSyncGroup``), as for an engine in this process."""
        return self._submit("rpc", method, tuple(args))

    def reset_prefix_cache(self) -> None:
        self._call("call", "reset_prefix_cache")

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], metas=None) -> None:
        """vLLM: as ``VLLMEngine.update_weights`` (a private gloo group, this process its rank 0, streamed buckets);
        other engines: the tensors, pickled to the child."""
        if self.kind != "vllm":
            from megatron_tulu.checkpoint.mapping import as_tensor

            self._call("call", "update_weights", [(k, as_tensor(v).detach().cpu()) for k, v in named_tensors])
            return
        from megatron_tulu.rollout.weight_sync import own_sync_group

        if self._own_sync is None:
            self._own_sync = own_sync_group(self, self.sync_bucket_bytes)
        self._own_sync.sync(named_tensors, metas=metas)

    def sleep(self) -> None:
        self._call("call", "sleep")

    def wake(self) -> None:
        self._call("call", "wake")

    def shutdown(self) -> None:
        """The child shuts its engine down and exits (bounded; its process group is stopped by signal otherwise).
        Never raises; safe twice."""
        if self._own_sync is not None:  # close() never raises
            self._own_sync.close()
            self._own_sync = None
        if not self._dead:
            try:
                self._wait(self._submit("call", "shutdown"), "shutdown", min(self.timeout_s, SHUTDOWN_TIMEOUT_S))
            except Exception as e:  # noqa: BLE001 - the process is stopped below regardless
                log.warning("engine process %d shutdown: %s", self.pid, e)
        self._stop()

    def _stop(self, grace_s: float = 30.0) -> None:
        """Hang up (the child's loop ends at end of stream, as when this process dies); after ``grace_s`` SIGTERM to
        the child's process group, after 10 s more SIGKILL; once the child has exited, SIGKILL to what is left of its
        group (vLLM's processes, which do not follow their parent), then reap it. Runs once."""
        with self._state:
            self._dead = self._dead or "it was shut down"
            if self._stopped:
                return
            self._stopped = True
        self._hang_up()
        for sig, wait_s in ((None, grace_s), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            if sig is not None:
                _signal_group(self.pid, sig)
            if self._exited.wait(timeout=wait_s):
                break
        _signal_group(self.pid, signal.SIGKILL)  # the child is a zombie or gone: its group id is still its own
        try:
            self.proc.wait(timeout=30)  # reap it
        except subprocess.TimeoutExpired:  # stuck in the kernel (uninterruptible I/O): say so, do not hang
            log.warning("engine process %d did not exit after SIGKILL", self.pid)
        self._reader.join(timeout=15)
        with self._send_lock:
            self._conn.close()
            self._sock.close()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except OSError:  # no process left in it
        pass


def _rebuild_error(pid: int, value) -> Exception:
    """The child's exception, as its own class where that is a builtin or a megatron_tulu one (callers catch
    ``ValueError``, ``WeightSyncError`` ...), else ``RuntimeError``; the message names the engine process."""
    module, name, message = value
    cls = getattr(builtins, name, None) if module == "builtins" else None
    if cls is None and module.startswith("megatron_tulu."):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            cls = None
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls, message = RuntimeError, f"{name}: {message}"
    try:
        return cls(f"{message} (in engine process {pid})")
    except Exception:  # noqa: BLE001 - an exception class with another constructor
        return RuntimeError(f"{name}: {message} (in engine process {pid})")


# ---------------------------------------------------------------------------------------------- the child


def _serve(fd: int) -> None:
    """The child's main loop: start the engine (call 0), then run each call in a thread until end of stream or a
    ``shutdown`` call. Whatever ends it, the engine is shut down and the process exits (``os._exit``: vLLM's
    threads must not hold the exit)."""
    from megatron_tulu.rollout.factory import EngineHost

    conn = Connection(fd)
    lock = threading.Lock()
    host = None
    pool = cf.ThreadPoolExecutor(max_workers=4, thread_name_prefix="engine-call")

    def answer(call_id: int, ok: bool, value) -> None:
        data = pickle.dumps((call_id, ok, value), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            with lock:
                conn.send_bytes(data)
        except OSError:
            pass  # the caller is gone; the loop sees end of stream

    def run(call_id: int, method: str, args):
        try:
            answer(call_id, True, getattr(host, method)(*args))
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the caller
            traceback.print_exc()
            answer(call_id, False, (type(e).__module__, type(e).__name__, str(e)))

    def start(kind, model_dir, engine_kwargs):
        nonlocal host
        host = EngineHost(kind, model_dir, engine_kwargs)
        return {"num_workers": host.num_workers() if kind == "vllm" else 0,
                "supports_regex": bool(host.engine.supports_regex)}

    code = 0
    try:
        call_id, _, args = pickle.loads(conn.recv_bytes())
        try:
            answer(call_id, True, start(*args))
        except BaseException as e:  # noqa: BLE001 - the start-up's failure is the caller's error
            traceback.print_exc()
            answer(call_id, False, (type(e).__module__, type(e).__name__, str(e)))
            return
        while True:
            call_id, method, args = pickle.loads(conn.recv_bytes())
            if method == "call" and args[0] == "shutdown":
                run(call_id, method, args)  # here, not behind calls that may hang in the pool
                return
            pool.submit(run, call_id, method, args)
    except (EOFError, OSError):
        pass  # the caller hung up or died
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        code = 1
    finally:
        _exit_after_shutdown(host, code)


def _exit_after_shutdown(host, code: int) -> None:
    """Shut the engine down (no caller may be left to stop this process group: past the bound, the group kills
    itself) and exit at once, whatever fails on the way."""
    try:
        watchdog = threading.Timer(SHUTDOWN_TIMEOUT_S, os.killpg, args=(0, signal.SIGKILL))
        watchdog.daemon = True
        watchdog.start()
        if host is not None:
            host.engine.shutdown()  # safe twice
        sys.stdout.flush(), sys.stderr.flush()
    except BaseException:  # noqa: BLE001
        code = code or 1
    finally:
        os._exit(code)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    # SLURM's preemption warning (it may reach every process of the job) is the trainer's to handle: checkpoint, exit
    # 75. Its default action would end the engine under the trainer's last generation. vLLM's processes inherit this.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    _serve(int(sys.argv[1]))
