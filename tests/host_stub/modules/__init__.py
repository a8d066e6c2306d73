"""Stand-in of the WebUI's `modules` package: only the names the VideoElevator adapter uses."""
