"""The model server behind `serve`: gunicorn (gthread workers) running a small Flask app.

    settings.py       ServingSettings: every SAGEMAKER_* knob, read once; worker/thread planning
    gunicorn_app.py   gunicorn configured from the settings; start-up validation and lifecycle hooks
    readiness.py      which workers have loaded the model (one file per worker under /tmp)
    predictor.py      Predictor (one per worker) and the background ModelLoader
    app.py            create_app(settings, source): /ping, /invocations, /execution-parameters
    codecs.py         request bodies -> model.table.Table, predictions -> response bodies
    attributes.py     X-Amzn-SageMaker-Custom-Attributes
    errors.py         the HTTP errors and their JSON body
"""
