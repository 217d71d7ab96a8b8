"""What running a job needs besides the method: checkpoints (checkpoint.py: the one place they are written and
read) and the processes of a torchrun job (distributed.py)."""
