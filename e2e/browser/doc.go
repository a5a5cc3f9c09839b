// Package browser holds the end-to-end tests that drive a real Chromium
// against an in-process broker: every token transport a browser can use,
// the failures a browser can and cannot see (1006 versus a 44xx close with
// the reason), the JavaScript client of clients/js, and the incident's
// regression (a token in the query string while the server reads only the
// header and the subprotocol). The package has no code outside its tests.
//
// Chromium is found at /usr/bin/chromium or $WSBROKER_CHROMIUM; the tests
// fail, not skip, without it.
package browser
