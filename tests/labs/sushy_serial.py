"""sushy-tools' Redfish emulator whose managers offer a serial console, as many BMCs' do: the
`SerialConsole` of the Manager resource, which sushy-tools leaves out, added to its answers.
argv[1]: the ConnectTypesSupported (comma list); the rest is sushy-emulator's command line."""

from __future__ import annotations

import json
import re
import sys

import flask
from sushy_tools.emulator import main as emulator  # type: ignore[import-untyped]

TYPES = sys.argv.pop(1).split(",")


@emulator.app.after_request
def offer_serial_console(response: flask.Response) -> flask.Response:
    path = flask.request.path.rstrip("/")
    if (
        flask.request.method == "GET"
        and response.status_code == 200
        and re.fullmatch(r"/redfish/v1/Managers/[^/]+", path)
    ):
        doc = json.loads(response.get_data())
        doc["SerialConsole"] = {"ServiceEnabled": True, "MaxConcurrentSessions": 1, "ConnectTypesSupported": TYPES}
        response.set_data(json.dumps(doc))
    return response


if __name__ == "__main__":
    sys.exit(emulator.main())
