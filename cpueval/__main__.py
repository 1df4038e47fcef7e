from cpueval.app import main

main()
