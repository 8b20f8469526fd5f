"""The trainer's process runs one BLAS thread (app.wiring.trainer.single_threaded_blas)."""

from __future__ import annotations

from threadpoolctl import ThreadpoolController, threadpool_info

from app.wiring.trainer import single_threaded_blas


def blas_threads() -> list[int]:
    return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]


def test_the_trainer_limits_blas_to_one_thread():
    # numpy's OpenBLAS is loaded; start from two threads (restored when the block ends)
    with ThreadpoolController().limit(limits=2, user_api="blas"):
        assert blas_threads() and all(n == 2 for n in blas_threads())
        single_threaded_blas()
        assert all(n == 1 for n in blas_threads())
