from taskbus.functions.status import status, status_wsgi
