"""Scripts the distributed tests run: a rendezvous over plain TCP (no torch), one with gloo where torch exists."""

RENDEZVOUS = '''
import json, os, socket, sys, time
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
names = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK")
print("contract", json.dumps({n: os.environ.get(n) for n in names}), flush=True)
if rank == 0:
    server = socket.create_server((addr, port))
    seen, peers = [0], []
    while len(seen) < world:
        peer, _ = server.accept()
        seen.append(int(peer.recv(16)))
        peers.append(peer)
    print("gathered", json.dumps(sorted(seen)), flush=True)
    for peer in peers:
        peer.sendall(b"ok")
        peer.close()
else:
    for _ in range(3000):
        try:
            sock = socket.create_connection((addr, port))
            break
        except OSError:
            time.sleep(0.01)
    sock.sendall(str(rank).encode())
    assert sock.recv(2) == b"ok"
    print("joined", rank, flush=True)
if os.environ.get("FAIL_RANK") == str(rank):
    raise ValueError(f"rank {rank} gives up")
if os.environ.get("HANG"):
    print("ready", flush=True)
    time.sleep(600)
'''

GLOO = '''
import os, torch, torch.distributed as dist
dist.init_process_group("gloo", init_method="env://")
value = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(value)
print("allreduce", int(value.item()), "world", dist.get_world_size(), flush=True)
dist.destroy_process_group()
'''
