"""The worker process: a trio + h11 HTTP/1.1 server fed by the front."""
