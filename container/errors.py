"""JobError: a training failure whose cause the user can fix, with the exit code it ends the job with.

train.py is the one boundary that renders errors: a JobError becomes its message (first line of
/opt/ml/output/failure) and its exit code; anything else is a bug and is reported with its traceback.
Serving errors are Werkzeug HTTPExceptions instead, which carry their HTTP status.
"""

EXIT_USER_ERROR = 2      # bad hyperparameters, configuration or data: fix the input and run again
EXIT_INTERNAL_ERROR = 1  # a bug in hyperplane: the failure file holds the traceback


class JobError(Exception):
    exit_code = EXIT_USER_ERROR
