"""The SageMaker side of hyperplane: the `train` and `serve` entry points and everything between them
and the model package (config files, channels, HTTP). It knows SageMaker's contract, never the math.

    paths.py            where things live under /opt/ml (or SAGEMAKER_BASE_DIR)
    hyperparameters.py  SageMaker's string hyperparameters -> model.config.TrainingConfig
    channels.py         channel folders (CSV, gzip, JSON Lines) -> model.table.Table
    train.py            `train`: the user's entry point (script_mode.py) or the built-in regressor:
                        config -> channels -> fit -> artifact, metrics
    script_mode.py      the user's entry point through sagemaker-training: SIGTERM, exit code, traceback
    failure.py          output/failure, the one place a failed job is reported
    stopping.py         SIGTERM in the built-in training: a stop request, exit code 143
    serve.py            `serve`: gunicorn with the Flask app in serving/
"""
