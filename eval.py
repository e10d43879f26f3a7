"""Test a trained checkpoint from a checkout: ``python eval.py model=<name> data=<name> ckpt_path=<file>``
(the same program as ``skyvar eval``)."""

from skyvar.cli import eval_main

if __name__ == "__main__":
    eval_main(prog="eval.py")
