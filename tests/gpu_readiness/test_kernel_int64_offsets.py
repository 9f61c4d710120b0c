"""Every Triton kernel in ``kernels/`` addresses memory with 64-bit offsets.

An int32 offset ``row * stride`` wraps once ``N*d`` (or ``V*d``) passes 2**31 (e.g. 262k tokens x 8192 hidden),
silently reading the wrong rows. The interpreter computes offsets in numpy int64 and never shows the wrap, so the
check is on the kernels' Triton IR (TTIR) instead, generated for an H100 target (sm_90) without a GPU: every
``arith.muli`` of two runtime values (an index times a stride) on the way to a ``tt.addptr`` offset must be
``i64``, so no such product is formed in int32 (nor formed in int32 and widened afterwards).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter without TRITON_INTERPRET (under it, @triton.jit gives interpreter objects that do
# not lower to IR). Integer arguments are typed i32, as Triton's launcher types any int below 2**31: the case
# where a product can wrap. Block sizes are the GPU ones from _pick_blocks / the DPO wrapper.
_GEN = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from triton._C.libtriton import ir
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend
from triton.compiler.compiler import ASTSource
import kernels.dpo_loss.triton_impl as D
import kernels.fused_logprob.triton_impl as F

def ttir(fn, ptrs, constexprs, floats=()):
    sig = {a: ("constexpr" if a in constexprs else "*" + ptrs[a] if a in ptrs else "fp32" if a in floats else "i32")
           for a in fn.arg_names}
    target = GPUTarget("cuda", 90, 32)
    backend = CUDABackend(target)
    opts = backend.parse_options({})
    ctx = ir.context()
    ir.load_dialects(ctx)
    backend.load_dialects(ctx)
    mod = ASTSource(fn=fn, signature=sig, constexprs=constexprs).make_ir(
        target, opts, backend.get_codegen_implementation(opts), backend.get_module_map(), ctx)
    return str(backend.make_ttir(mod, {}, opts, 90))  # inlines the @triton.jit helpers into the kernel

blocks = dict(BLOCK_N=64, BLOCK_V=128, BLOCK_D=64, IEEE=False, UPCAST=False, WITH_ENTROPY=True)
out = {
    "fused_logprob._fwd_kernel": ttir(F._fwd_kernel, dict(
        h_ptr="bf16", w_ptr="bf16", tgt_ptr="i64", m_ptr="fp32", s_ptr="fp32", tz_ptr="fp32", ez_ptr="fp32"),
        blocks, floats=("inv_temp",)),
    "fused_logprob._bwd_dlogits_kernel": ttir(F._bwd_dlogits_kernel, dict(
        h_ptr="bf16", w_ptr="bf16", tgt_ptr="i64", lse_ptr="fp32", ent_ptr="fp32", glp_ptr="fp32", gent_ptr="fp32",
        dz_ptr="bf16"), blocks, floats=("inv_temp",)),
    "dpo_loss._dpo_fwd_kernel": ttir(D._dpo_fwd_kernel, dict(
        p_ptr="fp32", r_ptr="fp32", m_ptr="u8", loss_ptr="fp32", rew_ptr="fp32", lp_ptr="fp32", coef_ptr="fp32"),
        dict(LOSS=1, HAS_REF=True, BLOCK_T=1024), floats=("beta", "label_smoothing", "gamma_beta_ratio")),
    "dpo_loss._dpo_bwd_kernel": ttir(D._dpo_bwd_kernel, dict(coef_ptr="fp32", m_ptr="u8", g_ptr="fp32",
                                                             out_ptr="bf16"), dict(BLOCK_T=1024), floats=("inv_b",)),
}
print(json.dumps(out))
"""

_DEF = re.compile(r"^\s*(%[\w.$-]+)(?::\d+)? = (\"?[\w.]+\"?)(.*)$")
_ADDPTR = re.compile(r"tt\.addptr (%[\w.$#-]+), (%[\w.$#-]+) : ")


@pytest.fixture(scope="module")
def ttirs() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silence Triton 3.9's default-change warning
    res = subprocess.run([sys.executable, "-c", _GEN, str(ROOT)], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=600)
    assert res.returncode == 0, f"TTIR generation failed:\n{res.stderr[-4000:]}"
    return json.loads(res.stdout)


def _ops(text: str) -> tuple[dict[str, tuple[str, list[str], str]], list[str]]:
    """SSA defs ``name -> (op, operand names, result type)`` and the ``tt.addptr`` lines, locations stripped."""
    defs, addptrs = {}, []
    for line in text.splitlines():
        line = re.sub(r"\s+loc\(.*\)$", "", line)
        m = _DEF.match(line)
        if not m:
            continue
        name, op, rest = m.groups()
        args, _, ty = rest.partition(" : ")
        defs[name] = (op, [re.sub(r"#\d+$", "", a) for a in re.findall(r"%[\w.$#-]+", args)], ty.strip())
        if op == "tt.addptr":
            addptrs.append(line.strip())
    return defs, addptrs


def _is_const(defs, name: str) -> bool:
    op, args, _ = defs.get(name, ("", [], ""))
    return op == "arith.constant" or (op == "tt.splat" and bool(args) and _is_const(defs, args[0]))


def _products(text: str) -> tuple[list[str], list[str]]:
    """``(narrow, wide)``: the products of two runtime values (an index times a stride, a program id times a
    size) that feed a ``tt.addptr`` offset, computed in int32 / in int64. A product with a constant (program id
    times a block size) is bounded by the grid and not counted. i32 offsets without such a product stay legal:
    the canonicalizer itself splits ``p + row*stride + t`` into ``(p + row*stride) + t`` with ``t`` (an index
    inside one row) in i32; added to a 64-bit pointer it cannot wrap."""
    defs, addptrs = _ops(text)
    narrow, wide = set(), set()
    for line in addptrs:
        m = _ADDPTR.search(line)
        assert m, f"unparsed addptr: {line}"
        todo, seen = [m.group(2)], set()  # the offset's def chain; loop-carried values and arguments are leaves
        while todo:
            v = todo.pop()
            if v in seen or v not in defs:
                continue
            seen.add(v)
            op, args, ty = defs[v]
            if op == "arith.muli" and len(args) == 2 and not any(_is_const(defs, a) for a in args):
                (wide if re.search(r"i64>?$", ty) else narrow).add(f"{v} = {op} {', '.join(args)} : {ty}")
            todo.extend(args)
    return sorted(narrow), sorted(wide)


KERNELS = ["fused_logprob._fwd_kernel", "fused_logprob._bwd_dlogits_kernel", "dpo_loss._dpo_fwd_kernel",
           "dpo_loss._dpo_bwd_kernel"]


@pytest.mark.parametrize("kernel", KERNELS)
def test_pointer_offsets_are_int64(ttirs, kernel):
    narrow, wide = _products(ttirs[kernel])
    assert not narrow, (f"{kernel}: {len(narrow)} int32 index*stride products feed pointer offsets (wrap past "
                        f"2**31):\n" + "\n".join(narrow))
    assert len(wide) >= 2, f"{kernel}: expected int64 index*stride products in its TTIR, found {wide}"


def test_checker_flags_int32_products():
    """The checker itself: an i32 row*stride product is caught (also when widened afterwards), i64 passes."""
    narrow = """
    %c64_i32 = arith.constant 64 : i32 loc(#loc1)
    %rows = arith.muli %pid, %c64_i32 : i32 loc(#loc2)
    %a = tt.splat %s_hn : i32 -> tensor<64x1xi32> loc(#loc3)
    %b = arith.muli %rows, %a : tensor<64x1xi32> loc(#loc3)
    %c = arith.extsi %b : tensor<64x1xi32> to tensor<64x1xi64> loc(#loc3)
    %d = tt.addptr %h, %c : tensor<64x1x!tt.ptr<bf16>>, tensor<64x1xi64> loc(#loc4)
    %e = tt.addptr %h, %ts : tensor<64x1x!tt.ptr<bf16>>, tensor<64x1xi32> loc(#loc4)
    """
    assert _products(narrow) == (["%b = arith.muli %rows, %a : tensor<64x1xi32>"], [])
    wide = narrow.replace("%a : tensor<64x1xi32>", "%a : tensor<64x1xi64>")
    assert _products(wide) == ([], ["%b = arith.muli %rows, %a : tensor<64x1xi64>"])
