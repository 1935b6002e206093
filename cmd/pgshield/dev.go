package main

func devCmd(args []string) error { return nil }
