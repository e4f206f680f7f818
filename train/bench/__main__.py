from train.bench.cli import main

main()
