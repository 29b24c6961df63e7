"""One WebSocket session for the NAT tests: COUNT echoes GAP seconds apart, then an idle pause
of IDLE seconds, then COUNT more echoes. Prints "ok N" with the number of echoes checked and
exits non-zero on a lost, changed or reordered message.

Usage: ws_session.py URL COUNT GAP IDLE"""

import asyncio
import sys

import websockets


async def echoes(socket, start, count, gap):
    for i in range(start, start + count):
        message = f"message {i}"
        await socket.send(message)
        reply = await asyncio.wait_for(socket.recv(), 15)
        assert reply == message, (reply, message)
        await asyncio.sleep(gap)


async def main(url, count, gap, idle):
    async with websockets.connect(url, ping_interval=None, open_timeout=15) as socket:
        await echoes(socket, 0, count, gap)
        await asyncio.sleep(idle)
        await echoes(socket, count, count, gap)
    print(f"ok {2 * count}")


if __name__ == "__main__":
    url, count, gap, idle = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    asyncio.run(main(url, count, gap, idle))
