"""Tests of the hosted-Canvas connector (tasks/canvas_rest/) against a live test Canvas."""
