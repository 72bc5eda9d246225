#!/usr/bin/env python3
"""Reads hyperfine's --export-json file; prints 'NAME MEDIAN_MS' per command."""
import json
import sys

for result in json.load(open(sys.argv[1]))["results"]:
    print(result["command"].split()[0], f"{result['median'] * 1000:.2f}")
