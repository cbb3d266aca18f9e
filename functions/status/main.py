from taskbus.functions.status import status
