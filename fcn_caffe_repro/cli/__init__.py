"""The `fcn` command (installed by pip; also `python -m fcn_caffe_repro`): one module per subcommand,
each with build_parser(prog), run(args) and main(argv); fcn_caffe_repro/cli/main.py dispatches."""
