"""Thin routers, one module per endpoint family: parse the body, call one `Service` method, render."""
