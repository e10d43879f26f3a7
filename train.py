"""Train a model from a checkout: ``python train.py model=<name> [data=...] [trainer=gpu|ddp] [experiment=...]``
(the same program as ``skyvar train``)."""

from skyvar.cli import train_main

if __name__ == "__main__":
    train_main(prog="train.py")
