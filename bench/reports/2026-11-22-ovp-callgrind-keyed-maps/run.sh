#!/bin/bash
# run.sh BIN TAG PORT
BIN=$1; TAG=$2; PORT=$3
valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file=/tmp/cg/cg.$TAG.%p $BIN --bind 127.0.0.1 -p $PORT --voice-port 0 --engine mmsg --workers 1 --reply-to source --control-socket /tmp/cg/$TAG.sock --metrics-listen off > /tmp/cg/$TAG.out 2> /tmp/cg/$TAG.err &
VP=$!
for i in $(seq 1 100); do grep -q ready /tmp/cg/$TAG.out 2>/dev/null && break; sleep 0.2; done
python3 /tmp/cg/send.py $PORT
sleep 1
kill -TERM $VP; wait $VP
grep -o "frames_received=[0-9]*" /tmp/cg/$TAG.err | tail -1
