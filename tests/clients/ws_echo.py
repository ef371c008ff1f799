"""A real WebSocket client (the `websockets` package) against URL: text, a 100 KiB binary
message, a ping, then a clean close. Prints "ok" when every echo matched."""
import asyncio
import sys

import websockets


async def main(url):
    async with websockets.connect(url, max_size=2**21) as ws:
        await ws.send("hello from a real client")
        assert await ws.recv() == "hello from a real client"
        audio = bytes(range(256)) * 400
        await ws.send(audio)
        assert await ws.recv() == audio
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 5)
    print("ok")


asyncio.run(asyncio.wait_for(main(sys.argv[1]), 20))
