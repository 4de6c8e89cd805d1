"""What every front (WebDAV, third-party copy, tape REST, metrics) shares: the request
context, authentication and authorisation, error rendering, header parsers, metrics text."""
