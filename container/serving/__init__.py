"""The model server behind `serve`: gunicorn (gthread workers) running a small Flask app.

It serves one of two things, decided once by the gunicorn master before it forks (startup.py): the
user's inference handlers when user code is found (handler mode), else the built-in regressor artifact.

    settings.py       ServingSettings: every SAGEMAKER_* knob, read once; worker/thread planning
    user_code.py      where the user's module is (SAGEMAKER_PROGRAM in SAGEMAKER_SUBMIT_DIRECTORY or
                      <model_dir>/code); nothing imported
    startup.py        the master's decision before fork: handler mode (requirements.txt), the artifact,
                      or one `cannot serve:` line and exit 3
    gunicorn_app.py   gunicorn configured from the settings; lifecycle hooks
    worker.py         PingLaneWorker: gthread with its own threads for /ping, so load never delays it
    readiness.py      which workers have loaded the model (one file per worker under /tmp); /ping's answer
    servable.py       the seam: the Servable interface the route calls (check, invoke, lock, version)
    predictor.py      Predictor (the built-in Servable) and the background ModelLoader (either kind)
    handlers.py       UserHandlers: the user's model_fn/input_fn/predict_fn/output_fn or transform_fn
                      through sagemaker-inference's Transformer, with safe defaults and errors
    app.py            create_app(settings, source): /ping, /invocations, /execution-parameters
    codecs.py         built-in mode: request bodies -> model.table.Table, predictions -> response bodies
    limits.py         rows per request and bytes per line (413), besides the payload size
    attributes.py     X-Amzn-SageMaker-Custom-Attributes
    errors.py         the HTTP errors and their JSON body
"""
