"""The used-car price regressor: tables in, predictions out, PyTorch underneath.

This package knows features and tensors and nothing of SageMaker, Flask or `/opt/ml`: the container
package drives it. The pieces, in the order data flows through them:

    table.py          Table: named columns of raw cells (what readers and codecs produce)
    schema.py         which columns are numeric or categorical, inferred from training data
    preprocessing.py  standardisation, category buckets, target transform (fitted on the training split)
    network.py        the linear model (the hyperplane) or an MLP
    config.py         TrainingConfig: every knob a user can set, typed and documented
    training.py       fit(): split, preprocess, optimise with early stopping, measure
    checkpointing.py  when fit() checkpoints, resumes and stops (the caller's Checkpointing)
    checkpoint.py     the checkpoint file: what decides the rest of a run, written atomically
    regressor.py      Regressor: preprocessing + network, table in, predictions out
    artifact.py       save/load one self-describing, versioned file (never unpickles code)
"""
