"""A minimal stand-in of fastapi (a host dependency): HTTPException with a status code and detail."""


class HTTPException(Exception):
    def __init__(self, status_code: int, detail=None, headers=None):
        super().__init__(status_code, detail)
        self.status_code, self.detail, self.headers = status_code, detail, headers
